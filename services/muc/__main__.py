"""python -m services.muc"""

from shared.runtime.runner import run
from shared.runtime.settings import MucSettings, load_or_exit

from .service import MucService


def main() -> None:
    settings = load_or_exit(MucSettings)
    run(MucService(settings), settings)


if __name__ == "__main__":
    main()
