"""python -m services.roster"""

from shared.runtime.runner import run
from shared.runtime.settings import RosterSettings, load_or_exit

from .service import RosterService


def main() -> None:
    settings = load_or_exit(RosterSettings)
    run(RosterService(settings), settings)


if __name__ == "__main__":
    main()
