# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv and build the
# colcon workspace (install/) idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
BUILT  := install/.built
# torch is pinned here, not in setup.py: this machine has the CPU 2.13.0 wheel on disk, while GPU
# users install the CUDA build they need.
TORCH  := torch==2.13.0
DEMO_OUT ?= demo_output
# Runs a command with .venv + install/ sourced and DDS confined to loopback.
ROS_ENV := tools/ros_env.sh

.PHONY: all setup build test demo bench fuzz soak burst clean
all: build

$(STAMP): setup.py requirements-dev.txt requirements-ros.txt tools/patch_rosidl_paths.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -r requirements-dev.txt
	$(PIP) -r requirements-ros.txt
	$(PIP) --no-deps -e .
	# The ROS wheels hard-code their build machine's Python include paths: point them here.
	$(BIN)/python tools/patch_rosidl_paths.py
	touch $@

setup: $(STAMP)

# Both packages: colcon does not descend into a folder that is itself a package, hence the two
# base paths. --symlink-install links install/ to the sources instead of copying them (no stale
# copy). The ROS wheels are in the venv, so it is the underlay (AMENT_PREFIX_PATH).
# Python sources need no rebuild (symlinked); new data files and message changes do.
WS_INPUTS := package.xml setup.py setup.cfg superseg_msgs/package.xml superseg_msgs/CMakeLists.txt \
             $(wildcard superseg_msgs/msg/*.msg config/* launch/* models/*)
$(BUILT): $(STAMP) $(WS_INPUTS)
	AMENT_PREFIX_PATH=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH \
	    $(BIN)/colcon build --symlink-install --base-paths . superseg_msgs
	touch $@

build: $(BUILT)

test: build
	$(ROS_ENV) $(BIN)/python -m pytest -q test

# make demo [INPUT=your.bag|image_folder|video|cityscapes_sequence_folder] [RATE=hz]
#           [CAMERA_INFO=camera.yaml|cam.txt|camera.json]
# RATE and CAMERA_INFO default to what the folder carries (times, calibration file), see README.
demo: build
	$(ROS_ENV) $(BIN)/python -m superseg_ros.demo --output $(DEMO_OUT) $(if $(INPUT),--input "$(INPUT)") \
	    $(if $(RATE),--rate $(RATE)) $(if $(CAMERA_INFO),--camera-info "$(CAMERA_INFO)")

bench: build
	$(ROS_ENV) $(BIN)/superseg-bench
	$(ROS_ENV) $(BIN)/superseg-bench-node

# >= 1000 generated inputs per entry point that takes outside bytes; prints the outcome table.
FUZZ_CASES ?= 1000
fuzz: build
	$(ROS_ENV) $(BIN)/python test/fuzz.py --cases $(FUZZ_CASES)

# Not part of `make test` (17 min at the default 10 Hz): 10,000 frames through the node; RSS,
# latency and skipped frames every 1,000; writes $(SOAK_OUT)/soak.json + soak.png, exits 1 when a
# target is missed. make soak SOAK_ARGS="--frames 600 --every 200" for a short run.
SOAK_OUT ?= runs/soak
soak: build
	$(ROS_ENV) $(BIN)/python tools/soak.py --output $(SOAK_OUT) $(SOAK_ARGS)

# A burst of 1,000 640x480 frames in about one second into the node; the node's RSS during and
# after it (peak, what bounds it). Writes $(BURST_OUT)/burst.json.
BURST_OUT ?= runs/burst
burst: build
	$(ROS_ENV) $(BIN)/python tools/burst.py --output $(BURST_OUT) $(BURST_ARGS)

clean:
	rm -rf $(DEMO_OUT) build install log .pytest_cache
