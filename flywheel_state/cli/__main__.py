"""``python -m flywheel_state.cli``: the ``flywheel-state`` command."""

from flywheel_state.cli import main

main()
