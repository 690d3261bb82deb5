"""``python -m tfmq_exp`` is the same as the ``tfmq-exp`` console script."""

from tfmq_exp.cli import main

if __name__ == "__main__":
    main()
