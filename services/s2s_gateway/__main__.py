"""python -m services.s2s_gateway"""

from shared.runtime.runner import run
from shared.runtime.settings import S2SSettings, load_or_exit

from .service import S2SGateway


def main() -> None:
    settings = load_or_exit(S2SSettings)
    run(S2SGateway(settings), settings)


if __name__ == "__main__":
    main()
