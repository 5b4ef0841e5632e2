"""python -m services.connection_manager"""

from shared.runtime.runner import run
from shared.runtime.settings import ConnectionManagerSettings, load_or_exit

from .service import ConnectionManager


def main() -> None:
    settings = load_or_exit(ConnectionManagerSettings)
    run(ConnectionManager(settings), settings)


if __name__ == "__main__":
    main()
