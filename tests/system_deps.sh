#!/usr/bin/env bash
# The system parts `make test` needs beyond Python: a PostgreSQL server (the storage tests start
# one on loopback as an unprivileged user) and Debian's chromium (the dashboard test drives it
# through Playwright; no browser download), and a one-node SLURM cluster with accounting plus
# PgBouncer (tests/test_slurm.py, bench/scale.py). Installed when this runs as root with apt-get;
# otherwise one line naming what is missing and how to get it, and exit 2.
set -euo pipefail
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  missing+=(postgresql)
fi
if [ ! -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi
# The SLURM cluster tests/test_slurm.py starts on loopback (with accounting: slurmdbd on MariaDB,
# without which submitit waits forever on a dead job) and the pooler bench/scale.py measures.
for pair in slurmctld:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server \
  pgbouncer:pgbouncer; do
  command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages the tests need: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "make test needs the system packages ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (Debian/Ubuntu) and retry" >&2
exit 2
