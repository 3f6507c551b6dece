"""Looking at results: training curves (:mod:`.curves`), the COCO error breakdown (:mod:`.coco_errors`),
detection plots (:mod:`.detection_plots`), the gallery of predictions (:mod:`.gallery`) and the
``report.html`` written by every evaluation (:mod:`.report`)."""
