# Replaced by the newsbag demo when that pipeline lands.
.PHONY: demo
demo: $(STAMP) ## the main job on an embedded default (for now: the environment doctor)
	$(PY) -m entrypoints doctor
