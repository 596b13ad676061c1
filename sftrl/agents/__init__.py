"""Agents: the policy protocol, the agent loop, rollout runners, trajectory logs and run metrics."""
