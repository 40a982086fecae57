"""``python -m render_service.worker``: run one render worker until SIGTERM."""

import sys

from render_service.worker.core import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
