"""The core: backend interface, errors, resources, policy, plan, runner, budget, report."""
