"""python -m services.presence"""

from shared.runtime.runner import run
from shared.runtime.settings import PresenceSettings, load_or_exit

from .service import PresenceService


def main() -> None:
    settings = load_or_exit(PresenceSettings)
    run(PresenceService(settings), settings)


if __name__ == "__main__":
    main()
