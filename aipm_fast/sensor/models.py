"""The models of the true power a sensor response can be fitted under (fit.py says what each is),
kept free of numpy so that the CLI can offer them without importing the fit."""

MODELS = ("levels", "transient", "rise-fall")
#: the models with a transient after a start, and those of them with one after an end too
TRANSIENT_MODELS = ("transient", "rise-fall")
FALL_MODELS = ("rise-fall",)
#: the model `aipm-fast calibrate` fits under unless asked otherwise. "transient" fits the H200's
#: captures better on held-out runs and moves the profile's parts towards their truths; "rise-fall"
#: fits them slightly better again and moves the parts no further (bench/RESULTS.md). Both take
#: 7-17 times as long to fit and were judged on recorded runs only: "transient" becomes the
#: default once a fresh GPU run of the profile checks confirms it
DEFAULT_MODEL = "levels"
