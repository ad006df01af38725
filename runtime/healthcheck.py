"""The image's HEALTHCHECK: exit 0 when /ping answers 200, 1 otherwise (no curl needed)."""

import os
import sys
import urllib.request

from mlimg_runtime.contract import HEALTH_PATH, PORT


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', PORT)}{HEALTH_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
