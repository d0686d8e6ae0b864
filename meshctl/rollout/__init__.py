"""Progressive delivery: `meshctl rollout` shifts traffic to a new version in steps, gated on its metrics."""
