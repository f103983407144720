"""VRP-SAM and ProSAM: a trained prompt encoder that turns an annotated reference into SAM
prompts for a target (VRP-SAM), optionally as a Student-t prompt distribution (ProSAM).

``encoder`` (the VRP encoder), ``variational`` (ProSAM's head, sampler and loss),
``network`` (encoder + head as one trainable module), ``method`` (the reference method
built on it), ``loading`` (from a checkpoint), ``feature_store`` and ``train`` (episodic
training), ``verification`` (ProSAM's section 5.3 study).
"""
