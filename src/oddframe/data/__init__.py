"""Reading everything oddframe takes (sources, FITS, layouts, ground truth) and turning it into model inputs."""
