#!/usr/bin/env bash
# Does a sensor response calibrated on bursts as short as an inference's phases (square waves of
# 20 and 10 ms beside the standard 400-40 ms) profile them better? One H200 call of about 300 s:
#   source bench/gpu_env.sh /tmp/build.log && bash bench/gpu_short_calibration.sh OUT
# OUT/cal_short.json (the calibration), OUT/cal_short_capture.json (its raw capture, to refit
# offline), OUT/profile/ (bench/gpu_profile_checks.py's files with that calibration, the
# standard calibrations' spread in its band), OUT/*.log each command's messages.
set -u
out=$(realpath -m "${1:-gpu-short-calibration}"); mkdir -p "$out"
A="import sys; from aipm_fast.cli import main; sys.exit(main())"
timeout "${CAL_TIMEOUT:-150}" python3 -c "$A" calibrate --seed 4 --square-periods 400,200,120,80,40,20,10 \
  --capture "$out/cal_short_capture.json" --calibration-file "$out/cal_short.json" > "$out/calibrate.txt" 2> "$out/calibrate.log"
echo "calibrate: exit $?"; tail -15 "$out/calibrate.txt"
[ -s "$out/cal_short.json" ] || exit 1
timeout "${PROFILE_TIMEOUT:-180}" python3 bench/gpu_profile_checks.py "$out/profile" --calibration-file "$out/cal_short.json" \
  --other-calibration bench/results/h200/sensor/calibrations.json \
  --other-calibration bench/results/h200/profile/cal1_refit.json \
  --synthetic-s "${SYNTHETIC_S:-14}" --separated-s "${SEPARATED_S:-10}" --model-s "${MODEL_S:-8}" --diff-s 1.5 \
  > "$out/profile.txt" 2> "$out/profile.log"
echo "profile checks: exit $?"; tail -30 "$out/profile.txt"
