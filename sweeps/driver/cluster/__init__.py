"""Ray Tune: the trials' cluster. The only folder importing ray."""
