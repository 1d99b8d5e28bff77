/*
 * Scenario registry. A scenario is one file that ends with
 *
 *     TG_SCENARIO("name", function);
 *
 * main.c runs the one named by tg.scenario=<name>. A scenario function
 * should not return; if it does, the guest resets.
 */
#ifndef TG_SCENARIO_H
#define TG_SCENARIO_H

struct tg_scenario {
	const char *name;
	unsigned long name_len;
	void (*run)(void);
};

#define TG_SCENARIO(str, fn)                                                \
	static const struct tg_scenario tg_scenario_##fn                     \
		__attribute__((section(".tg_scenarios"), used, aligned(8))) = \
			{ str, sizeof(str) - 1, fn }

#endif
