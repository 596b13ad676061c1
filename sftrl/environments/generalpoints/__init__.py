"""GeneralPoints (the 24-points card game) in language (GP-L) and vision (GP-VL) modes."""
