"""Progressive delivery: `meshctl rollout` shifts traffic to a new version in steps, gated on its metrics.

    machine   statuses, events and the one table of allowed transitions (pure)
    state     the rollout record (moved by machine's events) and its JSON file under the mesh home
    gates     a step's verdict from two reads of the canary's counters
    driver    the loop: set weights, wait, judge, fire the next event
    control   starting a rollout and the commands other terminals send it
"""
