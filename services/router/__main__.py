"""python -m services.router"""

from shared.router.service import Router
from shared.runtime.runner import run
from shared.runtime.settings import RouterSettings, load_or_exit


def main() -> None:
    settings = load_or_exit(RouterSettings)
    run(Router(settings), settings)


if __name__ == "__main__":
    main()
