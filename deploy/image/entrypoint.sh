#!/bin/sh
# `docker run IMAGE run --json` is `imgflow run --json`. A command a Prefect worker gives the container
# (`python -m prefect.engine`, `prefect flow-run execute`) runs under flows.container, which reports a
# flow run the kernel killed for memory as Crashed, saying so. A shell or imgflow itself runs as given.
case "$1" in
  python|python3|prefect) exec python -m flows.container -- "$@" ;;
  sh|bash|imgflow) exec "$@" ;;
esac
exec imgflow "$@"
