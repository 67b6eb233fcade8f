"""PenguinMails dashboards: `streamlit run dashboards/app.py` (started by `penguin up`)."""

import streamlit as st

st.set_page_config(page_title="PenguinMails", page_icon="🐧", layout="wide")

navigation = st.navigation(
    {
        "Sending": [
            st.Page("pages/sends.py", title="Sends", icon=":material/send:", default=True),
        ],
        "Contacts": [
            st.Page("pages/uploads.py", title="Uploads", icon=":material/upload_file:"),
        ],
    }
)
navigation.run()
