"""A GPU power sensor's response in time: what it is (`response`), how it is measured from a
known load schedule (`fit`, under one of the power models in `models`), where a measured one is
kept (`store`), and the capture format that holds raw samples against known load edges
(`capture`)."""
