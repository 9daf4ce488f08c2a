import sys

from worker_sdk.cli import main

if __name__ == "__main__":
    sys.exit(main())
