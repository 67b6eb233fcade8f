"""PenguinMails dashboards: `streamlit run dashboards/app.py` (started by `penguin up`)."""

import streamlit as st

st.set_page_config(page_title="PenguinMails", page_icon="🐧", layout="wide")

navigation = st.navigation(
    {
        "Analytics": [
            st.Page(
                "pages/overview.py", title="Overview", icon=":material/monitoring:", default=True
            ),
            st.Page("pages/campaigns.py", title="Campaigns", icon=":material/campaign:"),
            st.Page("pages/sequence.py", title="Sequence", icon=":material/account_tree:"),
            st.Page("pages/deliverability.py", title="Deliverability", icon=":material/verified:"),
            st.Page("pages/senders.py", title="Senders", icon=":material/outgoing_mail:"),
            st.Page("pages/sends.py", title="Sends", icon=":material/send:"),
        ],
        "Contacts": [
            st.Page("pages/contacts.py", title="Contacts", icon=":material/group:"),
            st.Page("pages/uploads.py", title="Uploads", icon=":material/upload_file:"),
        ],
    }
)
navigation.run()
