"""KubeRLHF: RLHF jobs on Ray, locally or on Kubernetes through KubeRay."""

__version__ = "0.1.0"
