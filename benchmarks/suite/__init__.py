"""The orchestrator's parts: plan, redis-server, step runner, progress bar, report, chart."""
