"""``python -m calibkit``."""

from calibkit.cli import main

if __name__ == "__main__":
    main()
