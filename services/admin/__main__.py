"""python -m services.admin"""

import sys

from shared.runtime.runner import run
from shared.runtime.settings import AdminSettings, ConfigError, load_or_exit

from .service import AdminService, check_settings


def main() -> None:
    settings = load_or_exit(AdminSettings)
    try:
        check_settings(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(AdminService(settings), settings)


if __name__ == "__main__":
    main()
