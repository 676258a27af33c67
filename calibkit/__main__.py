"""``python -m calibkit``."""

if __name__ == "__main__":
    # Imported here, not above: evaluate's worker processes import this module
    # (as the parent's main module) and need no command line.
    from calibkit.cli import main

    main()
