"""Entry point: ``python -m workers <workload> --config '<json>'``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
