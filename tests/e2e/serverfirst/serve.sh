#!/bin/sh
# One server in the foreground, on every address of its pod (the sidecar brings callers in from there), with
# the tests' access rules spelt out: MariaDB user mesh/mesh from anywhere, Redis without a password
# (protected mode off), PostgreSQL trusting every host (pg_hba.conf). A test image, never a production setup.
set -eu
case "$1" in
  mariadb)  # as root: it makes its socket directory, then drops to the mysql user itself
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    exec mariadbd --user=mysql --port="${2:-3306}" --bind-address=0.0.0.0 --skip-name-resolve \
      --innodb-buffer-pool-size=16M --performance-schema=OFF --init-file=/serverfirst/mariadb-init.sql ;;
  redis)
    exec redis-server --bind 0.0.0.0 --port "${2:-6379}" --protected-mode no --save '' --appendonly no ;;
  postgres)  # as the postgres user (compose's `user:`), on the cluster Debian's package created
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    exec "/usr/lib/postgresql/$version/bin/postgres" -D "/var/lib/postgresql/$version/main" \
      -c "config_file=/etc/postgresql/$version/main/postgresql.conf" -c hba_file=/serverfirst/pg_hba.conf \
      -c "listen_addresses=*" -c "port=${2:-5432}" -c ssl=off ;;
  *)
    echo "usage: serve.sh mariadb|redis|postgres [PORT]" >&2
    exit 2 ;;
esac
