#!/bin/bash
# steps.sh REPO STORE PAGES [local]: instructions per step of a hit (N=1000 minus N=500), per C
# iterator of step_instructions.py (see its docstring and benchmarks/PROFILE.md)
repo=$1; store=$2; pages=$3; local=$4
for n in 500 1000; do
  valgrind --tool=callgrind --callgrind-out-file=${TMPDIR:-/tmp}/cgs.$$.$n python "$(dirname "$0")/step_instructions.py" $repo "$store" $pages $n $local > /dev/null 2>&1
  callgrind_annotate --inclusive=yes --threshold=100 ${TMPDIR:-/tmp}/cgs.$$.$n 2>/dev/null | grep -E ":(map_next|filter_next|starmap_next|dropwhile_next|takewhile_next|filterfalse_next|accumulate_next|functools_reduce|min_max|groupby_next) " | sed -E 's/^ *([0-9,]+) .*:([a-z_]+) \[.*/\2 \1/' | tr -d , > ${TMPDIR:-/tmp}/cgs.$$.$n.txt
done
join <(sort ${TMPDIR:-/tmp}/cgs.$$.500.txt) <(sort ${TMPDIR:-/tmp}/cgs.$$.1000.txt) | awk -v tag="$(basename $repo) ${store%%\?*}${local:++local} $pages" '{printf "%s %s %d\n", tag, $1, ($3-$2)/500}'
