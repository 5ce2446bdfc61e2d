"""`python -m service.client score ...`: see `service.client.score`."""

from service.client.score import main

if __name__ == "__main__":
    raise SystemExit(main())
