/* The sandbox state machine, as a pure function. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "engine.h"

static void transitions(void **state)
{
	(void)state;
	assert_int_equal(sandbox_state_next(SB_CREATING, SB_EV_CREATED), SB_READY);
	assert_int_equal(sandbox_state_next(SB_CREATING, SB_EV_FAILED), SB_FAILED);
	assert_int_equal(sandbox_state_next(SB_CREATING, SB_EV_DESTROY), SB_DESTROYING);
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_FAILED), SB_FAILED); /* VMM died */
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_DESTROY), SB_DESTROYING);
	assert_int_equal(sandbox_state_next(SB_FAILED, SB_EV_DESTROY), SB_DESTROYING);
}

static void refusals(void **state)
{
	(void)state;
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_CREATED), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_FAILED, SB_EV_CREATED), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_FAILED, SB_EV_FAILED), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_DESTROYING, SB_EV_DESTROY), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_DESTROYING, SB_EV_CREATED), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_DESTROYING, SB_EV_FAILED), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_READY, (enum sandbox_event)99), -EINVAL);
}

static void names(void **state)
{
	(void)state;
	assert_string_equal(sandbox_state_name(SB_CREATING), "creating");
	assert_string_equal(sandbox_state_name(SB_READY), "ready");
	assert_string_equal(sandbox_state_name(SB_FAILED), "failed");
	assert_string_equal(sandbox_state_name(SB_DESTROYING), "destroying");
	assert_string_equal(template_state_name(TPL_STALE), "stale");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(transitions),
		cmocka_unit_test(refusals),
		cmocka_unit_test(names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
