"""Looking at data, runs and models: the data explorer (`dataset`), the HTML run report
(`report`: curves, errors, predictions, Grad-CAM, filters, embeddings, calibration) and run
comparison (`compare`). Import from the submodules: matplotlib and captum load only when used."""
