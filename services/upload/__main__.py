"""python -m services.upload"""

from shared.runtime.runner import run
from shared.runtime.settings import UploadSettings, load_or_exit

from .service import UploadService


def main() -> None:
    settings = load_or_exit(UploadSettings)
    run(UploadService(settings), settings)


if __name__ == "__main__":
    main()
