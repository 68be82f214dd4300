#!/bin/sh
# Run every benchmark and keep the raw output beside RESULTS.md.
# Usage: bench/run_all.sh   (from anywhere; needs root for the local Zabbix stack)
# The machine should be otherwise idle: the figures are only as quiet as the cores.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/out"
mkdir -p "$out"
cd "$here/.."
echo "== middleware"; python3 -m bench.middleware | tee "$out/middleware.txt"
echo "== rss";        python3 -m bench.rss        | tee "$out/rss.txt"
echo "== sender";     python3 -m bench.sender     | tee "$out/sender.txt"
echo "== vehicle";    python3 -m bench.vehicle    | tee "$out/vehicle.txt"
echo "== mist";       python3 -m bench.mist --direct | tee "$out/mist.txt"
echo "== aws";        python3 -m bench.aws        | tee "$out/aws.txt"
echo "== mqtt";       python3 -m bench.mqtt       | tee "$out/mqtt.txt"
echo "== fleet";      python3 -m bench.fleet      | tee "$out/fleet.txt"
echo "== fleet, proxy"; python3 -m bench.fleet --vans 5000 --proxy hybrid | tee "$out/fleet-proxy.txt"
echo "== connections"; python3 -m bench.connections | tee "$out/connections.txt"
echo "== choices";    python3 -m bench.choices    | tee "$out/choices.txt"
echo "raw output in $out/; copy the tables into bench/RESULTS.md"
