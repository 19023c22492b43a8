"""PEFT adapters: target layer groups, applying and releasing them, files on disk, many adapters on one base.
The only folder importing peft, and the only one that knows PEFT's internals."""
