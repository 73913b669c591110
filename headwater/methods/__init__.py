"""The methods of docs/method.md on top of the engine: vectors, judges, generation and evaluation,
behaviour vectors, attribution, discovery and interventions. Methods never import a workflow,
the organism or the CLI; import the module you need (nothing is re-exported here)."""
