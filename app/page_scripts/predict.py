"""Predictions page: where to put images at a scale not trained. The best intro_fraction and
image_ratio against scale with the cross-scale trend and the extrapolated point, the predicted
VL/text frontier there, and the backtest (the largest trained scale predicted from the smaller)."""

from __future__ import annotations

import streamlit as st

from analysis.mdtext import md_text
from analysis.predict import next_scale
from app import loaders, session
from app.views import PredictionOptions, build_predicted_frontier, build_prediction


def predict_page() -> None:
    ctx = session.context()
    st.title("Predict the next scale")
    sizes = loaders.trained_sizes(ctx.version, ctx.filters)
    a, b = st.columns(2)
    rung = f"{next_scale(sizes):.3g}" if len(sizes) > 1 else "1e9"
    text = a.text_input("target LM parameters (blank: the study's next rung)", value="", placeholder=rung,
                        key="predict_params")
    bootstrap = b.select_slider("bootstrap resamples", [0, 100, 200, 500, 1000], value=200, key="predict_boot")
    try:
        params = float(text) if text.strip() else None
    except ValueError:
        st.error(f"target parameters: {md_text(repr(text))} is not a number (e.g. 1.4e9)")
        return
    options = PredictionOptions(params=params, bootstrap=bootstrap)
    built = session.show("prediction", build_prediction, options)
    if built is not None:
        session.show("prediction_frontier", build_predicted_frontier, options)
        with st.expander("Backtest: the largest trained scale predicted from the smaller ones", expanded=True):
            st.dataframe(built.table, hide_index=True)


if __name__ == "__main__":
    predict_page()
