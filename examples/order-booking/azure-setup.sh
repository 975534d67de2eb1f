#!/usr/bin/env bash
# Creates what the order-booking example needs in Azure: a Standard Service Bus namespace
# (transactions and topics need Standard or Premium) with the topic `booking-events`, its
# subscription `booking-processor` and the queue `notifications`, duplicate detection on; and a
# storage account (the app creates its tables on start). The same entities as entities.ts.
#
#   RESOURCE_GROUP=rg-booking SERVICEBUS_NAMESPACE=sb-booking-123 STORAGE_ACCOUNT=stbooking123 \
#     ./examples/order-booking/azure-setup.sh
#
# With ASSIGN_ROLES=1 it also grants the signed-in user the data roles DefaultAzureCredential
# needs (SERVICEBUS_NAMESPACE and AZURE_STORAGE_ACCOUNT_URL instead of connection strings).
# It prints no secret: the commands to read the connection strings come at the end.
set -euo pipefail

: "${RESOURCE_GROUP:?set RESOURCE_GROUP}"
: "${SERVICEBUS_NAMESPACE:?set SERVICEBUS_NAMESPACE (globally unique)}"
: "${STORAGE_ACCOUNT:?set STORAGE_ACCOUNT (3-24 lowercase letters and digits, globally unique)}"
LOCATION="${LOCATION:-westeurope}"
DUPLICATE_WINDOW="${DUPLICATE_WINDOW:-PT10M}"

az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

az servicebus namespace create --resource-group "$RESOURCE_GROUP" --name "$SERVICEBUS_NAMESPACE" \
  --location "$LOCATION" --sku Standard --output none

# The outbox publishes every booking event here, with deterministic message ids: duplicate
# detection drops an event sent again after a crash.
az servicebus topic create --resource-group "$RESOURCE_GROUP" --namespace-name "$SERVICEBUS_NAMESPACE" \
  --name booking-events --enable-duplicate-detection true \
  --duplicate-detection-history-time-window "$DUPLICATE_WINDOW" --output none

# maxDeliveryCount matches the processor's maxAttempts (10), so a message that keeps failing is
# dead-lettered with the handler's error as its reason.
az servicebus topic subscription create --resource-group "$RESOURCE_GROUP" \
  --namespace-name "$SERVICEBUS_NAMESPACE" --topic-name booking-events --name booking-processor \
  --lock-duration PT30S --max-delivery-count 10 --output none

az servicebus queue create --resource-group "$RESOURCE_GROUP" --namespace-name "$SERVICEBUS_NAMESPACE" \
  --name notifications --enable-duplicate-detection true \
  --duplicate-detection-history-time-window "$DUPLICATE_WINDOW" \
  --lock-duration PT30S --max-delivery-count 10 --output none

az storage account create --resource-group "$RESOURCE_GROUP" --name "$STORAGE_ACCOUNT" \
  --location "$LOCATION" --sku Standard_LRS --kind StorageV2 --min-tls-version TLS1_2 --output none

if [[ "${ASSIGN_ROLES:-0}" == "1" ]]; then
  assignee="$(az ad signed-in-user show --query id --output tsv)"
  namespace_id="$(az servicebus namespace show --resource-group "$RESOURCE_GROUP" --name "$SERVICEBUS_NAMESPACE" --query id --output tsv)"
  storage_id="$(az storage account show --resource-group "$RESOURCE_GROUP" --name "$STORAGE_ACCOUNT" --query id --output tsv)"
  for role in "Azure Service Bus Data Sender" "Azure Service Bus Data Receiver"; do
    az role assignment create --assignee "$assignee" --role "$role" --scope "$namespace_id" --output none
  done
  az role assignment create --assignee "$assignee" --role "Storage Table Data Contributor" \
    --scope "$storage_id" --output none
fi

cat <<INSTRUCTIONS
Created. Run the example against it with connection strings:

  export SERVICEBUS_CONNECTION_STRING="\$(az servicebus namespace authorization-rule keys list \\
    --resource-group $RESOURCE_GROUP --namespace-name $SERVICEBUS_NAMESPACE \\
    --name RootManageSharedAccessKey --query primaryConnectionString --output tsv)"
  export AZURE_STORAGE_CONNECTION_STRING="\$(az storage account show-connection-string \\
    --resource-group $RESOURCE_GROUP --name $STORAGE_ACCOUNT --query connectionString --output tsv)"
  npm start

or, after ASSIGN_ROLES=1 (role assignments take a few minutes to apply), with Entra ID:

  export SERVICEBUS_NAMESPACE=$SERVICEBUS_NAMESPACE
  export AZURE_STORAGE_ACCOUNT_URL=https://$STORAGE_ACCOUNT.table.core.windows.net
  npm start
INSTRUCTIONS
