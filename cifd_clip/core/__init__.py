"""The method core both paths build on: the loss terms, the IBM, how the RDMs teach, and the distiller's
base. It imports no stage package (distill/, classify/, embed/, rdm/'s training and reports)."""
