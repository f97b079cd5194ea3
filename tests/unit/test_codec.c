/* SHA-256 against FIPS 180-4 vectors; base64 round trips and rejects. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"

static void hex_of(const char *msg, size_t len, char out[65])
{
	struct sha256_ctx c;
	uint8_t d[32];

	sha256_init(&c);
	sha256_update(&c, msg, len);
	sha256_final(&c, d);
	sha256_hex(d, out);
}

static void sha256_vectors(void **state)
{
	char h[65];

	(void)state;
	hex_of("", 0, h);
	assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	hex_of("abc", 3, h);
	assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	hex_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, h);
	assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void sha256_incremental(void **state)
{
	/* one million 'a', fed in odd-sized pieces */
	struct sha256_ctx c;
	uint8_t d[32];
	char h[65], buf[997];

	(void)state;
	memset(buf, 'a', sizeof(buf));
	sha256_init(&c);
	for (size_t left = 1000000; left;) {
		size_t n = left < sizeof(buf) ? left : sizeof(buf);

		sha256_update(&c, buf, n);
		left -= n;
	}
	sha256_final(&c, d);
	sha256_hex(d, h);
	assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

static void base64_roundtrip(void **state)
{
	uint8_t data[256];

	(void)state;
	for (int i = 0; i < 256; i++)
		data[i] = (uint8_t)i;
	for (size_t len = 0; len <= sizeof(data); len += 1) {
		char *enc = base64_encode(data, len);
		uint8_t *dec = NULL;
		ssize_t n = base64_decode(enc, strlen(enc), &dec);

		assert_int_equal(n, (ssize_t)len);
		assert_memory_equal(dec, data, len);
		free(enc);
		free(dec);
	}
	char *e = base64_encode("foobar", 6);
	assert_string_equal(e, "Zm9vYmFy");
	free(e);
}

static void base64_rejects(void **state)
{
	static const char *const bad[] = { "Zm9", "Zm9v!mFy", "Z===", "Zm=v", "====" };
	uint8_t *out = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(base64_decode(bad[i], strlen(bad[i]), &out), -EINVAL);
}

static void crc32c_vectors(void **state)
{
	uint8_t buf[4096];
	uint32_t whole, parts = 0;

	(void)state;
	assert_int_equal(crc32c_update(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(crc32c_update(0, "", 0), 0);
	/* 32 zero bytes (RFC 3720, B.4) */
	memset(buf, 0, 32);
	assert_int_equal(crc32c_update(0, buf, 32), 0x8A9136AAu);
	memset(buf, 0xff, 32);
	assert_int_equal(crc32c_update(0, buf, 32), 0x62A8AB43u);
	/* in pieces, at odd alignments, equals at once; one flipped bit changes it */
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	whole = crc32c_update(0, buf, sizeof(buf));
	for (size_t o = 0; o < sizeof(buf);) {
		size_t n = o % 13 + 1;

		if (n > sizeof(buf) - o)
			n = sizeof(buf) - o;
		parts = crc32c_update(parts, buf + o, n);
		o += n;
	}
	assert_int_equal(parts, whole);
	buf[2049] ^= 0x10;
	assert_int_not_equal(crc32c_update(0, buf, sizeof(buf)), whole);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sha256_vectors),
		cmocka_unit_test(sha256_incremental),
		cmocka_unit_test(base64_roundtrip),
		cmocka_unit_test(base64_rejects),
		cmocka_unit_test(crc32c_vectors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
