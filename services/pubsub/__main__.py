"""python -m services.pubsub"""

from shared.runtime.runner import run
from shared.runtime.settings import PubsubSettings, load_or_exit

from .service import PubsubService


def main() -> None:
    settings = load_or_exit(PubsubSettings)
    run(PubsubService(settings), settings)


if __name__ == "__main__":
    main()
