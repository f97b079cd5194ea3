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
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_PAUSE), SB_PAUSED);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_RESUME), SB_READY);
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_HIBERNATE), SB_HIBERNATED);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_HIBERNATE), SB_HIBERNATED);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_WAKE), SB_READY);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_DESTROY), SB_DESTROYING);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_DESTROY), SB_DESTROYING);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_FAILED), SB_FAILED);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_FAILED), SB_FAILED); /* a wake that failed */
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_STOP), SB_STOPPED);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_STOP), SB_STOPPED);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_STOP), SB_STOPPED);
	assert_int_equal(sandbox_state_next(SB_STOPPED, SB_EV_START), SB_READY);
	assert_int_equal(sandbox_state_next(SB_STOPPED, SB_EV_DESTROY), SB_DESTROYING);
	/* a rollback comes back ready from every state with files to restore into */
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_ROLLBACK), SB_READY);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_ROLLBACK), SB_READY);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_ROLLBACK), SB_READY);
	assert_int_equal(sandbox_state_next(SB_STOPPED, SB_EV_ROLLBACK), SB_READY);
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
	/* every lifecycle verb in a state that does not allow it */
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_RESUME), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_WAKE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_PAUSE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_PAUSED, SB_EV_WAKE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_HIBERNATE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_PAUSE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_HIBERNATED, SB_EV_RESUME), -EBUSY);
	for (int st = SB_CREATING; st < _SB_STATE_MAX; st++) {
		if (st == SB_READY || st == SB_PAUSED)
			continue;
		assert_int_equal(sandbox_state_next((enum sandbox_state)st, SB_EV_HIBERNATE), -EBUSY);
	}
	assert_int_equal(sandbox_state_next(SB_CREATING, SB_EV_PAUSE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_FAILED, SB_EV_PAUSE), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_DESTROYING, SB_EV_WAKE), -EBUSY);
	for (int ev = SB_EV_PAUSE; ev < _SB_EV_MAX; ev++)
		if (ev != SB_EV_START && ev != SB_EV_ROLLBACK)
			assert_int_equal(sandbox_state_next(SB_STOPPED, (enum sandbox_event)ev), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_READY, SB_EV_START), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_STOPPED, SB_EV_STOP), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_CREATING, SB_EV_ROLLBACK), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_FAILED, SB_EV_ROLLBACK), -EBUSY);
	assert_int_equal(sandbox_state_next(SB_DESTROYING, SB_EV_ROLLBACK), -EBUSY);
}

static void names(void **state)
{
	(void)state;
	assert_string_equal(sandbox_state_name(SB_CREATING), "creating");
	assert_string_equal(sandbox_state_name(SB_READY), "ready");
	assert_string_equal(sandbox_state_name(SB_FAILED), "failed");
	assert_string_equal(sandbox_state_name(SB_DESTROYING), "destroying");
	assert_string_equal(sandbox_state_name(SB_PAUSED), "paused");
	assert_string_equal(sandbox_state_name(SB_HIBERNATED), "hibernated");
	assert_string_equal(sandbox_state_name(SB_STOPPED), "stopped");
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
