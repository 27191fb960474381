"""Coverage-guided fuzzing of Vireo's parsers and device models (issue #18; see docs/fuzzing.md).

fuzz.harness holds the engine (mutator, branch coverage, corpus, crash triage); fuzz.targets.* each register
functions taking bytes. bench/fuzz.py runs them for as long as asked; tests/fuzz/ runs each for seconds in CI.
"""
