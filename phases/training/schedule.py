"""When to evaluate: a pure function of the schedule."""


def evaluation_steps(max_steps: int) -> list[int]:
    """Step 0, every power of two below `max_steps`, and `max_steps` itself.

    A step is evaluated before that step's update, so step 0 is the untrained network and step
    `max_steps` is the network after all `max_steps` updates (the paper's protocol).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    steps = [0]
    power = 1
    while power < max_steps:
        steps.append(power)
        power *= 2
    steps.append(max_steps)
    return steps
