"""Promotion, the stage after the search: rank the trials (ranking), decide and run the re-runs that
choose a configuration (selection, reruns), and release the chosen checkpoint as the run dir's
promoted model (release, card). `stage.promote(plan, results)` runs it all."""
